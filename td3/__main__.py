import sys

from td3.cli import main

sys.exit(main())
