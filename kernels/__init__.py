"""Hot operators, each with a readable reference beside its fast path and one entry point that
picks the path by the convention of `kernels.dispatch` (an environment variable per op names a
path; the path taken is recorded, and a fallback from a faster one warns)."""


def implementations(device: str = "cpu") -> dict[str, str]:
    """The path each operator takes on this device, for the run's log and MLflow tags."""
    from kernels.attention import attention_impl
    from kernels.fftconv import fftconv_impl
    from kernels.selective_scan import selective_scan_impl
    from kernels.wkv import wkv_impl

    return {
        "attention": attention_impl(device),
        "fftconv": fftconv_impl(device),
        "selective_scan": selective_scan_impl(device),
        "wkv": wkv_impl(device),
    }
