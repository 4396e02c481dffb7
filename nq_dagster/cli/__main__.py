"""`python -m nq_dagster.cli`: the `nq` command."""

import sys

from nq_dagster.cli import main

sys.exit(main())
