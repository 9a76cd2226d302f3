"""Train the tiny model as one process of a launch (`accelerate launch ... tests/dist_train.py PARAMS_JSON OUT`):
each rank records what it ran under (world size, accelerate's distributed type, whether its parameters are sharded
DTensors) in OUT/probe-RANK.json; `--raise-on-rank R` makes rank R raise at step 2, after the others are waiting."""
import json, os, sys, time
from pathlib import Path
from transformers import TrainerCallback
from finetune_kit.settings import make_config
from finetune_kit.train import train

params, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
raise_on = int(sys.argv[sys.argv.index("--raise-on-rank") + 1]) if "--raise-on-rank" in sys.argv else None
rank = int(os.environ.get("RANK", 0))

class Probe(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == 1:
            from accelerate.state import AcceleratorState
            from torch.distributed.tensor import DTensor
            info = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", 1)),
                    "distributed_type": str(AcceleratorState().distributed_type),
                    "sharded": any(isinstance(p, DTensor) for p in model.parameters())}
            (out/f"probe-{rank}.json").write_text(json.dumps(info))
        if state.global_step == 2 and rank == raise_on:
            (out/"raised_at").write_text(str(time.time()))
            raise RuntimeError(f"planted failure on rank {rank}")

def fsdp_on_cpu():
    "accelerate 1.x turns ACCELERATE_USE_FSDP into FSDP only on GPU-class backends: let it on gloo (test only)."
    from accelerate.state import AcceleratorState, DistributedType, PartialState
    init = AcceleratorState.__init__
    def patched(self, *a, fsdp_plugin=None, **kw):
        init(self, *a, fsdp_plugin=fsdp_plugin, **kw)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState.__init__ = patched

if "--fsdp-on-cpu" in sys.argv: fsdp_on_cpu()
out.mkdir(parents=True, exist_ok=True)
train(make_config(params, settings=False), callbacks=[Probe()])
