# tpnet on a CUDA GPU: training (tpnet-train, torchrun, SLURM jobs), evaluation, export and batch inference.
#
#   docker build -t tpnet .
#   docker run --rm --gpus all --shm-size=8g -v "$PWD/data:/data" -v "$PWD/outputs:/outputs" \
#       -v "$PWD/mlflow:/mlflow" tpnet tpnet-train experiment=gpu_full hydra.run.dir=/outputs/run1
#
# docs/scale-out.md has the multi-GPU, multi-node and SLURM commands. The base image brings Python 3.11,
# CUDA 12.4, cuDNN 9 and PyTorch/torchvision builds inside the ranges pyproject.toml admits, so pip keeps
# them and installs only tpnet's own dependencies.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same install as scripts/setup_venv.sh, but non-editable and without the dev tools: the package with
# the training extra and the SLURM launcher. The Hydra configs ship inside the package (tpnet/configs/).
WORKDIR /opt/tpnet
COPY pyproject.toml README.md ./
COPY src ./src
COPY scripts ./scripts
RUN python -m pip install '.[train,slurm]' \
    && python -c "import tpnet, torch; print('tpnet', tpnet.__version__, 'torch', torch.__version__)"

# The synthetic dataset cache goes to the data volume, MLflow to its own volume (a SQLite file by default;
# point MLFLOW_TRACKING_URI at a tracking server for a team, see docs/scale-out.md). Own configs instead of the
# shipped ones: mount a folder with the same layout and set TPNET_CONFIG_DIR to it.
ENV TPNET_CACHE=/data/cache \
    MLFLOW_TRACKING_URI=sqlite:////mlflow/mlflow.db

# Run as an ordinary user; the volumes are created owned by it (bind mounts keep the host's ownership:
# add --user "$(id -u):$(id -g)" to docker run to write files owned by you).
RUN useradd --create-home --uid 1000 --shell /bin/bash tpnet \
    && mkdir -p /data /outputs /mlflow \
    && chown tpnet:tpnet /data /outputs /mlflow
USER tpnet
WORKDIR /outputs
VOLUME ["/data", "/outputs", "/mlflow"]

# No ENTRYPOINT: the command is the tool, so one image serves tpnet-train, tpnet-eval, tpnet-export,
# tpnet-infer, tpnet-data and torchrun alike. Without arguments it prints the training help.
CMD ["tpnet-train", "--help"]
