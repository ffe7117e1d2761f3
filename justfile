# kd-bench tasks. Get just with: cargo install just --locked

set dotenv-load := false

hf_home := env_var_or_default("HF_HOME", justfile_directory() + "/../shared/data/hf-cache")

# List the recipes
default:
    @just --list

# Run an experiment's recipe: just reproduce vanilla-kd-cifar10 [--profile smoke] [--seeds 0,1,2]
reproduce experiment *args:
    HF_HOME={{hf_home}} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} cargo run --release -p kd-cli --bin kd -- reproduce {{experiment}} {{args}}

# The test suite (the same command CI runs)
test:
    HF_HOME={{hf_home}} HF_HUB_OFFLINE=1 cargo test --release --workspace

# Training and inference examples/s of the models (kd bench); the kernels' criterion benches are `cargo bench -p kd-kernels`
bench *args:
    cargo run --release -p kd-cli --bin kd -- bench {{args}}

# Any kd command with the shared hub cache, offline unless set: just kd list, just kd compare results/x.csv
kd *args:
    HF_HOME={{hf_home}} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} cargo run --release -p kd-cli --bin kd -- {{args}}

# Evaluate a saved model on any split: just eval --checkpoint runs/x/<hash>/kd-seed0.safetensors --dataset uoft-cs/cifar10 --split test
eval *args:
    HF_HOME={{hf_home}} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} cargo run --release -p kd-cli --bin kd -- eval {{args}}

# Experiments with their methods, datasets and papers
list:
    cargo run --release -p kd-cli --bin kd -- list

# Formatting and lints as CI wants them
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --release -- -D warnings

# Mean ± std, CI and paired gain over plain per group: just compare [results/x.csv] [--by variant,role,config_hash]
compare *args:
    cargo run --release -p kd-cli --bin kd -- compare {{args}}

# Paper tables (papers/tables/) and plots (results/plots/): just report vanilla-kd-cifar10 [--profile cpu]
report +args:
    cargo run --release -p kd-cli --bin kd -- report {{args}}

# Hyper-parameter sweep on a validation split: just sweep vanilla-kd-cifar10 --profile sweep --grid distill.temperature=1,2,4,8 --grid distill.alpha=0.5,0.9 [--emit slurm DIR]
sweep experiment *args:
    HF_HOME={{hf_home}} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} cargo run --release -p kd-cli --bin kd -- sweep {{experiment}} {{args}}

# BibTeX for a configuration and its papers: just cite vanilla-kd-cifar10 [--profile cpu]
cite experiment *args:
    cargo run --release -p kd-cli --bin kd -- cite {{experiment}} {{args}}

# A kd that trains on NVIDIA GPUs (--device cuda) in target/cuda/release/kd; needs no GPU to build (README: GPU)
build-cuda *args:
    scripts/build-cuda.sh {{args}}

# On a CUDA machine: every smoke recipe with --device cuda, kd bench and PyTorch on the GPU: just gpu-check /tmp/gpu-check
gpu-check out:
    HF_HOME={{hf_home}} scripts/gpu-check.sh {{out}}
