"""Write a quantized variant as a packed checkpoint (AWQ-GEMM or GPTQ), atomically, readable by any
user the umask allows, with its size in ``export.json`` and the numbers the serving check compares
against in ``serving_reference.json``."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import models
from harness.errors import HarnessError

EXPORT_FILE = "export.json"
FORMAT_NAMES = {"awq": "AWQ-GEMM", "gptq": "GPTQ"}


@dataclass
class Exported:
    path: Path
    format: str
    dtype: str
    bytes: int  # every file of the checkpoint but export.json
    tensor_bytes: int  # the weights' tensor data

    def describe(self) -> str:
        return (f"exported {FORMAT_NAMES[self.format]} checkpoint to {self.path}: {self.bytes:,} bytes "
                f"({self.bytes / 1e6:.1f} MB; {self.dtype} unquantized tensors)")


def _write(model, tok, result, method_cfg, export_cfg, tmp: Path) -> dict:
    from harness.serving_check import write_reference
    from kernels.export import checkpoint_bytes, export_checkpoint

    export_checkpoint(model, tok, result.qweights, method_cfg.group_size, tmp,
                      dtype=models.COMPUTE_DTYPES[export_cfg.dtype], fmt=export_cfg.format)
    write_reference(model, tok, tmp)  # the model in memory now computes what the file holds
    size = checkpoint_bytes(tmp)  # before export.json exists: its own few bytes are not counted
    info = {"format": export_cfg.format, "dtype": export_cfg.dtype, "group_size": method_cfg.group_size,
            "method": method_cfg.name, "bytes": size["files"], "tensor_bytes": size["tensors"]}
    (tmp / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def export_quantized(model, tok, result, method_cfg, export_cfg) -> Exported:
    """Pack the quantized weights into QuantLinear layers and write the checkpoint into a temporary
    sibling directory renamed into place: a failure leaves nothing half-written."""
    from kernels.export import make_readable

    out = Path(export_cfg.dir).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            info = _write(model, tok, result, method_cfg, export_cfg, tmp)
            make_readable(tmp)  # mkdtemp made it 0700
            if out.exists():
                out.rmdir()  # check_export allowed only an empty directory
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except (ValueError, OSError) as e:
        raise HarnessError(f"export.dir={export_cfg.dir}: {e}") from None
    return Exported(out, info["format"], info["dtype"], info["bytes"], info["tensor_bytes"])
