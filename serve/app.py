"""The import path of serve/config.yaml and older callers: `serve.app:app_builder`.

The application lives in the package's modules: args (typed config), schemas (HTTP models),
pool (model replicas), api (the FastAPI ingress), gallery (the page), run (builder, runner).
"""

from serve.args import AutoscalingArgs, ServeArgs, ServeConfigError, build_args, load_app_config
from serve.pool import encode_png
from serve.run import app_builder, describe_models, run_foreground

__all__ = ["AutoscalingArgs", "ServeArgs", "ServeConfigError", "app_builder", "build_args",
           "describe_models", "encode_png", "load_app_config", "run_foreground"]
