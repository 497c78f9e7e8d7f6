from pathup.cli import main

raise SystemExit(main())
