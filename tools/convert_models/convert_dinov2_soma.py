"""Same CLI as ``convert_dinov2_sora.py`` (the release's name), under the method's new name."""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from convert_dinov2_sora import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
