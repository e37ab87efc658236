from polychromic.cli import main

raise SystemExit(main())
