import sys

from dpfast.cli import main

sys.exit(main())
