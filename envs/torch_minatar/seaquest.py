from maskrl.envs.torch_minatar._base import TorchMinAtarGame


class Seaquest(TorchMinAtarGame):
    name = "seaquest"
