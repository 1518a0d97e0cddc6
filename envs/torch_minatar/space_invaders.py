from maskrl.envs.torch_minatar._base import TorchMinAtarGame


class SpaceInvaders(TorchMinAtarGame):
    name = "space_invaders"
