import sys

from foley_dist.cli import main

sys.exit(main())
