"""Mitogen's linear strategy, opt-in: ANSIBLE_STRATEGY=mitogen_linear (docs/performance.md).

Mitogen (pinned in scripts/requirements.txt) runs every task of a host through one persistent Python
interpreter on it instead of a new SSH command and module upload per task. This file only exposes the
installed package's strategy under ansible.cfg's strategy_plugins, so that no path into the virtualenv
(which names the Python version) has to be configured. Without the variable, Ansible's own linear
strategy runs and this file is never loaded.
"""

import ansible_mitogen.loaders
import ansible_mitogen.strategy

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
    """The linear strategy, run through Mitogen's connection multiplexer."""
