from maskrl.envs.torch_minatar._base import TorchMinAtarGame


class Asterix(TorchMinAtarGame):
    name = "asterix"
