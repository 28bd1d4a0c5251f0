from galorekit.cli import main

raise SystemExit(main())
