"""
nanoGPT's configurator, strict, and the two things every entry point needs besides: the device and a policy
loaded from its checkpoint.

    config = configure(['config/gpu.py', '--out_dir=out-gpu'], defaults)

Config files are python that assigns known keys; then --key=value overrides. An unknown key, or a value of
another type than its default, stops with a ConfigError that names the file or argument and the key.
"""
import ast
import os

import torch

from model import GPT, GPTConfig, load_checkpoint


class ConfigError(ValueError):
    pass


def configure(argv, defaults):
    """{key: value}: the defaults, then each config file in argv, then each --key=value, in order."""
    config = dict(defaults)

    def setkey(key, value, where):
        if key not in defaults:
            raise ConfigError(f"{where}: unknown config key '{key}'")
        want = type(defaults[key])
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise ConfigError(f"{where}: key '{key}' wants {want.__name__}, got {value!r}")
        config[key] = value

    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise ConfigError(f"config file '{arg}' not found")
            scope = {}
            exec(compile(open(arg).read(), arg, 'exec'), scope)
            for key, value in scope.items():
                if not key.startswith('_') and not callable(value) and not isinstance(value, type(os)):
                    setkey(key, value, arg)
        else:
            key, eq, text = arg[2:].partition('=')
            if not eq:
                raise ConfigError(f"'{arg}': write overrides as --key=value")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as --method=grpo
            if type(defaults.get(key)) is str and not isinstance(value, str):
                value = text  # a string key given digits: --decode_samples=4,16 is not a tuple
            setkey(key, value, arg)
    return config


def pick_device(name):
    """'auto' picks cuda, then mps, then cpu; any other name is used as it is."""
    if name != 'auto':
        return name
    if torch.cuda.is_available():
        return 'cuda'
    if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'


def load_policy(path, device):
    """(GPT, checkpoint dict) from a checkpoint of the SFT or an RL stage."""
    ckpt = load_checkpoint(path, device)
    model = GPT(GPTConfig(**ckpt['model_args'])).to(device)
    model.load_state_dict(ckpt['model'])
    return model, ckpt


def rl_path(out_dir, method, seed):
    return os.path.join(out_dir, f'rl_{method}_seed{seed}.pt')
