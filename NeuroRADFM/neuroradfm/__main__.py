import sys

from neuroradfm.cli import main

sys.exit(main())
