"""The local dev cluster: a real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) built from the Go module proxy, with KWOK-run fake GPU node pools."""

from llama_operator_dev.controlplane import ControlPlane

__all__ = ["ControlPlane"]
