import sys

from lowkeyd.cli import main

sys.exit(main())
