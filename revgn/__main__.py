import sys

from revgn.cli import main

sys.exit(main())
