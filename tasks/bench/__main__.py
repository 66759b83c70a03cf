"""`python -m tasks.bench NAME [ARGS...]`: the door `scaling bench` opens, without the CLI."""

import sys

from tasks.bench import main

# The guard matters: the data benchmark's spawned workers import this module again, as __mp_main__.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
