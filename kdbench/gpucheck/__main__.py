import sys

from kdbench.gpucheck.main import main

sys.exit(main())
