"""An exported ONNX model (`python -m deeplab.export`, float or int8) run by ONNX Runtime behind the model's
interface, and the session and tensor names every ONNX caller shares."""

from pathlib import Path

import torch
from torch import nn

from deeplab.errors import one_line
from deeplab.torch_files import CheckpointError

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def ort_session(path: str | Path):
    """An ONNX Runtime CPU session with full graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """An exported model (`python -m deeplab.export`, float or int8) run by ONNX Runtime behind the model's interface:
    normalised float (N, 3, H, W) in, (N, C, H, W) logits out, on the input's device."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CheckpointError(f"{path}: no such ONNX model file; export one with python -m deeplab.export "
                                  "checkpoint=PATH, or leave onnx=null to run the checkpoint's weights")
        with open(self.path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            raise CheckpointError(f"{path}: a PyTorch file, not an ONNX model; pass it as checkpoint=, and give "
                                  "onnx= a model exported with python -m deeplab.export (or onnx=null)")
        try:
            self.session = ort_session(self.path)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            reason = one_line(exc)[:200] or type(exc).__name__
            raise CheckpointError(f"{path}: not a readable ONNX model ({reason}); export it again with "
                                  "python -m deeplab.export") from exc
        self.num_classes = int(self(torch.zeros(1, 3, 32, 32)).shape[1])  # the graph may leave C symbolic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(logits).to(x.device)
