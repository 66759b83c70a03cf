"""Data: a corpus (sample, pile, text) or a genome (hg38) tokenized once into a token cache, and the
batches drawn from it. `prepare_data` builds or reuses the cache; `TokenCache` opens it."""

from tasks.data.cache import TokenCache
from tasks.data.corpus import DataError
from tasks.data.prepare import check_data, prepare_data, vocab_size_for

__all__ = ["DataError", "TokenCache", "check_data", "prepare_data", "vocab_size_for"]
