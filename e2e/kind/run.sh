#!/usr/bin/env bash
# End to end on kind: build the operator image, load it into a kind cluster, install the chart,
# serve Llama 3.2 1B Instruct (GGUF Q4_K_M) on CPU llama.cpp, send one chat completion through
# the Service and check the reply, then delete the cluster.
#
# Needs: docker (an engine with >= 4 CPUs and ~4 GiB free memory), kind, kubectl, helm, curl,
# python3, and network access to the container registries and the Hugging Face hub.
# Environment:
#   KIND_CLUSTER      cluster name (default llama-operator-e2e)
#   KIND_NODE_IMAGE   kind node image (default: kind's own)
#   KEEP_CLUSTER=1    keep the cluster afterwards (and reuse it when it exists)
#   READY_TIMEOUT     how long the model may take to download and load (default 20m)
#   HELM, KUBECTL     binaries to use (default: on PATH, else ~/.cache/llama-operator/bin/<versions>/)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/e2e/kind"
cluster="${KIND_CLUSTER:-llama-operator-e2e}"
image=llama-operator:e2e
operator_namespace=llama-operator
namespace=llama-e2e
name=llama-1b-cpu
ready_timeout="${READY_TIMEOUT:-20m}"
local_port="${LOCAL_PORT:-18080}"
start=$SECONDS

step() { printf '[e2e %4ds] %s\n' "$((SECONDS - start))" "$*"; }
die() {
	printf 'e2e: %s\n' "$*" >&2
	exit 1
}

cached_bin() {
	local versions bin_dir KUBERNETES_VERSION ETCD_VERSION KWOK_VERSION HELM_VERSION
	versions="$(grep -E '^[A-Z_]+=' "$root/hack/controlplane-versions.env")"
	eval "$versions"
	bin_dir="${LLAMA_OPERATOR_BIN_DIR:-${LLAMA_OPERATOR_CACHE:-$HOME/.cache/llama-operator}/bin/k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}}"
	[[ -x "$bin_dir/$1" ]] && echo "$bin_dir/$1"
}
tool() { command -v "$1" || cached_bin "$1" || die "$1 not found (on PATH or built by hack/build-controlplane.sh)"; }

command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"
command -v kind >/dev/null || die "kind not found: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found"
helm="${HELM:-$(tool helm)}"
kubectl="${KUBECTL:-$(tool kubectl)}"
cpus="$(docker info --format '{{.NCPU}}')"
((cpus >= 4)) || die "the Docker engine has $cpus CPUs; the CPU llama.cpp replica requests 4"

kubeconfig="$(mktemp)"
port_forward_pid=""
cleanup() {
	local status=$?
	if [[ -n "$port_forward_pid" ]]; then
		kill "$port_forward_pid" 2>/dev/null || true
	fi
	if ((status != 0)) && [[ -s "$kubeconfig" ]]; then
		step "failed; state of the cluster:"
		k get llamadeployments,deployments,pods,services -n "$namespace" -o wide || true
		k get llamadeployment "$name" -n "$namespace" -o yaml || true
		k describe pods -n "$namespace" || true
		k logs -n "$operator_namespace" deployment/llama-operator --tail=100 || true
		k logs -n "$namespace" "deployment/$name" --all-containers --tail=50 || true
	fi
	if [[ "${KEEP_CLUSTER:-}" == 1 ]]; then
		step "keeping cluster $cluster (kind delete cluster --name $cluster removes it)"
	else
		step "deleting cluster $cluster"
		kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
	fi
	rm -f "$kubeconfig"
	exit "$status"
}
trap cleanup EXIT
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
	step "reusing kind cluster $cluster"
else
	step "creating kind cluster $cluster"
	kind create cluster --name "$cluster" --config "$here/cluster.yaml" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 2m
fi
kind get kubeconfig --name "$cluster" >"$kubeconfig"

step "building $image"
docker build --tag "$image" "$root"
step "loading $image into $cluster"
kind load docker-image "$image" --name "$cluster"

step "installing the chart into $operator_namespace (restricted Pod Security)"
k create namespace "$operator_namespace" --dry-run=client -o yaml | k apply -f -
k label namespace "$operator_namespace" pod-security.kubernetes.io/enforce=restricted --overwrite
"$helm" upgrade --install llama-operator "$root/charts/llama-operator" --kubeconfig "$kubeconfig" \
	--namespace "$operator_namespace" --set image.repository=llama-operator --set image.tag=e2e \
	--set image.pullPolicy=Never --set logFormat=text --wait --timeout 5m

step "applying $name (CPU llama.cpp, model downloaded by its init container)"
k create namespace "$namespace" --dry-run=client -o yaml | k apply -f -
k apply -n "$namespace" -f "$here/llama-3.2-1b-cpu.yaml"
step "waiting up to $ready_timeout for Ready"
k wait -n "$namespace" "llamadeployment/$name" --for=condition=Ready --timeout="$ready_timeout"
k get llamadeployment -n "$namespace" "$name"

step "port-forwarding service/$name to 127.0.0.1:$local_port"
k port-forward -n "$namespace" --address 127.0.0.1 "service/$name" "$local_port:80" >/dev/null &
port_forward_pid=$!
deadline=$((SECONDS + 60))
until curl -fsS "http://127.0.0.1:$local_port/health" >/dev/null 2>&1; do
	((SECONDS < deadline)) || die "the port-forward did not answer within 60 s"
	sleep 1
done

step "POST /v1/chat/completions"
response="$(curl -fsS "http://127.0.0.1:$local_port/v1/chat/completions" -H 'Content-Type: application/json' \
	-d "{\"model\": \"$name\", \"max_tokens\": 32, \"temperature\": 0,
	     \"messages\": [{\"role\": \"user\", \"content\": \"Reply with one word: what color is the sky on a clear day?\"}]}")"
reply="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"].strip())' <<<"$response")"
[[ -n "$reply" ]] || die "empty reply: $response"
step "reply: $reply"
step "passed"
