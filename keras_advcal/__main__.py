"""``python -m keras_advcal``: the ``advcal`` command line (see :mod:`keras_advcal.cli`)."""

import sys

from keras_advcal.cli import main

if __name__ == "__main__":
    sys.exit(main())
