"""The networks and training recipes the settings describe: one place that turns Settings into
the plain configs of the generation modules (used by the assets, the bench and the tests)."""

from aras_assets.generation.spade import SpadeConfig
from aras_assets.generation.stylegan import StyleGanConfig
from aras_assets.generation.training import UNCOND, CondTrainConfig, GanTrainConfig
from aras_assets.settings import Settings


def style_config(s: Settings) -> StyleGanConfig:
    return StyleGanConfig(resolution=s.gan_resolution, z_dim=s.gan_z_dim, w_dim=s.gan_w_dim,
                          mapping_layers=s.gan_mapping_layers, channel_base=s.gan_channel_base,
                          channel_max=s.gan_channel_max)


def spade_config(s: Settings) -> SpadeConfig:
    return SpadeConfig(resolution=s.gan_resolution, z_dim=s.cond_z_dim, channels=s.cond_channels, hidden=s.cond_hidden)


def expected_config(s: Settings, kind: str) -> dict:
    return (style_config(s) if kind == UNCOND else spade_config(s)).to_dict()


def uncond_recipe(s: Settings) -> GanTrainConfig:
    return GanTrainConfig(steps=s.gan_steps, batch_size=s.gan_batch_size, lr=s.gan_lr, r1_gamma=s.gan_r1_gamma,
                          r1_interval=s.gan_r1_interval, style_mixing=s.gan_style_mixing, ema_kimg=s.gan_ema_kimg,
                          augment=tuple(s.gan_augment), checkpoint_every=s.gan_checkpoint_every,
                          fid_every=s.gan_fid_every, seed=s.gan_seed,
                          accumulate=s.gan_accumulate, ada_target=s.gan_ada_target, ada_kimg=s.gan_ada_kimg)


def cond_recipe(s: Settings, perceptual: bool) -> CondTrainConfig:
    """The perceptual (VGG) term is on only when its local weights are loaded."""
    return CondTrainConfig(steps=s.cond_steps, batch_size=s.cond_batch_size, lr_g=s.cond_lr_g, lr_d=s.cond_lr_d,
                           cutmix_prob=s.cond_cutmix_prob, consistency_weight=s.cond_consistency_weight,
                           vgg_weight=s.cond_vgg_weight if perceptual else 0.0, ema_kimg=s.gan_ema_kimg,
                           checkpoint_every=s.gan_checkpoint_every, fid_every=s.gan_fid_every, seed=s.gan_seed)

