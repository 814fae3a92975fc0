"""`python -m builder` is the same as the `pifleet` command."""

from builder.cli import main

raise SystemExit(main())
