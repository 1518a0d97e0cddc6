from maskrl.envs.torch_minatar._base import TorchMinAtarGame


class Freeway(TorchMinAtarGame):
    name = "freeway"
