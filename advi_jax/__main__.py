"""`python -m advi_jax` runs the `advi-jax` command."""

import sys

from advi_jax.cli import main

sys.exit(main())
