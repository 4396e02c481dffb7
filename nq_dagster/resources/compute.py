"""Compute device resource: `auto` picks CUDA when torch sees a GPU, else the CPU."""

from dagster import ConfigurableResource


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return name


class ComputeResource(ConfigurableResource):
    device: str = "auto"

    def torch_device(self) -> str:
        return resolve_device(self.device)
