"""``python -m harness.report``: the command line of harness.report (see :func:`harness.report.main`)."""
import sys

from harness.report import main

if __name__ == "__main__":
    sys.exit(main())
