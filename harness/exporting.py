"""Write a quantized variant as an AWQ-GEMM checkpoint, atomically."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from harness.errors import HarnessError


def export_quantized(model, tok, result, method_cfg, export_dir: str) -> Path:
    """Pack the quantized weights into QuantLinear layers and write the checkpoint into a temporary
    sibling directory renamed into place: a failure leaves nothing half-written."""
    from kernels.export import export_checkpoint

    out = Path(export_dir).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            export_checkpoint(model, tok, result.qweights, method_cfg.group_size, tmp)
            if out.exists():
                out.rmdir()  # check_export allowed only an empty directory
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except (ValueError, OSError) as e:
        raise HarnessError(f"export.dir={export_dir}: {e}") from None
    return out
