"""Entry point: `python -m dispatcher` (plain threads; no gevent in this process)."""

from dispatcher.app import main

if __name__ == "__main__":
    main()
