from taskclf_daemon.cli import main

if __name__ == "__main__":  # guard: spawned pipeline workers import this module
    raise SystemExit(main())
