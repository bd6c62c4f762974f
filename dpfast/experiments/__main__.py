import sys

from dpfast.experiments import main

sys.exit(main())
