"""``python -m gateway`` runs the same CLI as the ``gateway`` console script."""

from gateway.cli import main

raise SystemExit(main())
