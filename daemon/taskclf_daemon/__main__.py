from taskclf_daemon.cli import main

raise SystemExit(main())
