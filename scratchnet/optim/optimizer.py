"""The optimizer base, as torch.optim.Optimizer: parameter groups with per-group options, per-parameter
state, and ``state_dict`` / ``load_state_dict`` in torch's layout.

Each update runs on the backend its parameter's arrays live on (``param.backend``).
"""

import numpy as np

from scratchnet.nn import Parameter


class Optimizer:
    """``params``: Parameters, or dicts ``{"params": [...], option: value}`` (parameter groups; options
    not given take the optimizer's defaults). ``param_groups`` holds the groups, ``state`` each
    parameter's state (a dict, empty before its first update)."""

    # Whether a captured CUDA graph of the update may be replayed (its host scalars fixed): each optimizer says.
    replayable = False

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for group in groups if isinstance(groups[0], dict) else [{"params": groups}]:
            self.add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for index, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {index}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        return "\n".join(lines + [")"])

    def add_param_group(self, group):
        if not isinstance(group, dict):
            raise TypeError(f"{type(self).__name__}: a parameter group is a dict, got {type(group).__name__}")
        params = group.get("params")
        params = [params] if isinstance(params, Parameter) else list(params or ())
        if not params or not all(isinstance(param, Parameter) for param in params):
            raise TypeError(f"{type(self).__name__}: a parameter group needs a non-empty list of Parameters")
        group = {**self.defaults, **group, "params": params}
        self._check_options(group)
        seen = {id(param) for other in self.param_groups for param in other["params"]}
        if len({id(param) for param in params}) != len(params) or seen & {id(param) for param in params}:
            raise ValueError(f"{type(self).__name__}: some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def _check_options(self, group):
        """Refuse a group's invalid options (each optimizer its own)."""

    @property
    def params(self):
        """Every parameter, group after group."""
        return [param for group in self.param_groups for param in group["params"]]

    def zero_grad(self):
        for param in self.params:
            param.grad.fill(0)

    def step(self):
        raise NotImplementedError

    # ---- state ---------------------------------------------------------------------------

    def state_dict(self):
        """``{"state": {index: {name: value}}, "param_groups": [{option: value, "params": [index, ...]}]}``,
        parameters numbered in group order and arrays copied to the host, as torch's."""
        params = self.params
        index = {id(param): number for number, param in enumerate(params)}
        state = {index[id(param)]: {name: _to_host(param, value) for name, value in self.state[param].items()}
                 for param in params if self.state.get(param)}
        groups = [{**{key: value for key, value in group.items() if key != "params"},
                   "params": [index[id(param)] for param in group["params"]]} for group in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore ``state_dict()``'s options and state (torch's, with its tensors as NumPy arrays, too);
        the groups must have the same sizes."""
        name = type(self).__name__
        groups = state_dict["param_groups"]
        if [len(group["params"]) for group in groups] != [len(group["params"]) for group in self.param_groups]:
            raise ValueError(f"{name}.load_state_dict: the saved parameter groups' sizes differ from this optimizer's")
        saved_index = [number for group in groups for number in group["params"]]
        by_saved_index = dict(zip(saved_index, self.params))
        state = {}
        for number, values in state_dict["state"].items():
            param = by_saved_index[int(number)]
            state[param] = {key: _to_device(param, key, value, name) for key, value in values.items()}
        for group, saved in zip(self.param_groups, groups):
            group.update({key: value for key, value in saved.items() if key != "params"})
        self.state = state


def _to_host(param, value):
    return value if isinstance(value, (int, float)) else param.backend.to_numpy(value).copy()


def _to_device(param, key, value, name):
    if np.ndim(value) == 0:  # a count, like Adam's step (torch keeps it as a 0-d tensor)
        return float(value)
    value = np.asarray(value)
    if value.shape != param.shape:
        raise ValueError(f"{name}.load_state_dict: {key} has shape {value.shape}, expected {param.shape}")
    return param.backend.asarray(value.astype(param.data.dtype))
