# The local control plane's nodes: Debian's containerd (with runc and the CNI
# loopback plugin) and kubelet per node, one kube-scheduler, all on loopback,
# all state under "$state". Sourced by scripts/cluster; uses its helpers
# (start, alive, wait_for, failed, free_port, write_kubeconfig, log, die) and
# variables (state, bindir, repo, cache).
#
# What this machine kind needs (cgroup v1 only, no CAP_SYS_RESOURCE):
# kubelet `failCgroupV1: false` and `cgroupDriver: cgroupfs`; containerd
# `restrict_oom_score_adj = true`; a pause image built here (no registry).
#
# Networking: a node's only CNI network is `loopback`. Pods must use
# `hostNetwork: true`; they reach the API server on 127.0.0.1. A pod without
# host networking fails to start with a CNI error, on purpose: nothing here
# gets an address outside 127.0.0.0/8.
#
# Node i (1, 2, ...) is named portplane-node-i and has the address 127.0.0.i:
# hostNetwork pods on different nodes share this machine's network namespace,
# so each node's pods listen on their own node's loopback address.

PAUSE_IMAGE=localhost/portplane/pause:1

node_name() { echo "portplane-node-$1"; }
node_ip() { echo "127.0.0.$1"; }
node_dir() { echo "$state/node-$1"; }
node_sock() { echo "$state/node-$1/containerd/containerd.sock"; }
node_count() { find "$state" -maxdepth 1 -name 'node-*' -type d 2>/dev/null | wc -l; }
apiserver_url() { echo "https://127.0.0.1:$(cat "$state/apiserver.port")"; }

# Pods go under a cgroup of their own in every hierarchy, so `down` finds and
# removes exactly what this node made.
node_cgroup() { echo "portplane-$(cat "$state/apiserver.port")-node-$1"; }

# The pause container every pod sandbox holds: a static C program that waits
# for a signal and reaps children, the job of Kubernetes' own pause. Built by
# scripts/image, cached by the hash of its sources.
pause_image_tar() {
  local src=$repo/images/pause sum out
  sum=$(cat "$src/pause.c" "$src/Dockerfile" | sha256sum | cut -c1-12)
  out=$cache/images/pause-$sum.tar
  if [[ ! -f $out ]]; then
    mkdir -p "$cache/images"
    "$repo/scripts/image" pause "$out" >&2 || die "building the pause image failed"
  fi
  echo "$out"
}

# The certificates the nodes' parts present: each kubelet as
# system:node:<name> (the Node authorizer scopes it to its own node), the
# scheduler as system:kube-scheduler (bound by Kubernetes' default RBAC).
node_certs() { # node-count
  local name subj i names=(scheduler)
  for ((i = 1; i <= $1; i++)); do names+=("kubelet-$i"); done
  (
    cd "$state/pki"
    umask 077
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    for name in "${names[@]}"; do
      [[ -f $name.crt ]] && continue
      case $name in
        kubelet-*) subj="/O=system:nodes/CN=system:node:$(node_name "${name#kubelet-}")" ;;
        scheduler) subj="/CN=system:kube-scheduler" ;;
      esac
      openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$name.key" -out "$name.csr" 2>/dev/null
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile client.ext -out "$name.crt" 2>/dev/null
    done
    rm -f ./*.csr ./*.ext
  )
}

nodes_up() { # count
  local count=$1 i missing=() cmd pause port
  [[ $count =~ ^[1-9]$ ]] || die "--nodes takes 1 to 9, not '$count'"
  for cmd in containerd runc ctr; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
  [[ -x /usr/lib/cni/loopback ]] || missing+=("/usr/lib/cni/loopback")
  ((${#missing[@]} == 0)) || die "the nodes need ${missing[*]}; run scripts/deps (installs containerd, runc, containernetworking-plugins)"
  node_certs "$count"
  pause=$(pause_image_tar)
  for ((i = 1; i <= count; i++)); do alive "$state/containerd-$i.pid" || containerd_up "$i" "$pause"; done
  if ! alive "$state/kube-scheduler.pid"; then
    port=$(free_port)
    write_kubeconfig "$state/scheduler.kubeconfig" scheduler "$(apiserver_url)"
    start kube-scheduler "$bindir/kube-scheduler" --kubeconfig "$state/scheduler.kubeconfig" \
      --authentication-kubeconfig "$state/scheduler.kubeconfig" \
      --authorization-kubeconfig "$state/scheduler.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$port" --leader-elect=false --v=0
  fi
  for ((i = 1; i <= count; i++)); do alive "$state/kubelet-$i.pid" || kubelet_up "$i"; done
  for ((i = 1; i <= count; i++)); do node_initialize "$i"; done
  for ((i = 1; i <= count; i++)); do
    wait_for "$state/kubelet-$i.pid" 120 "$bindir/kubectl" --kubeconfig "$state/kubeconfig" \
      wait --for=condition=Ready "node/$(node_name "$i")" --timeout=1s || failed "kubelet-$i"
  done
  alive "$state/kube-scheduler.pid" || failed kube-scheduler
}

containerd_up() { # node pause-image-tar
  local i=$1 dir
  dir=$(node_dir "$i")
  mkdir -p "$dir/containerd" "$dir/cni"
  printf '%s\n' '{"cniVersion": "1.0.0", "name": "portplane-loopback", "plugins": [{"type": "loopback"}]}' \
    >"$dir/cni/10-loopback.conflist"
  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$(node_sock "$i")"
[ttrpc]
  address = "$(node_sock "$i").ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
EOF
  start "containerd-$i" containerd --config "$dir/containerd/config.toml"
  wait_for "$state/containerd-$i.pid" 30 ctr --address "$(node_sock "$i")" version || failed "containerd-$i"
  import_image "$i" "$2"
}

kubelet_up() { # node
  local i=$1 dir cgroup hierarchy port healthz
  dir=$(node_dir "$i") cgroup=$(node_cgroup "$i")
  mkdir -p "$dir/kubelet"
  write_kubeconfig "$dir/kubelet.kubeconfig" "kubelet-$i" "$(apiserver_url)"
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -f ${hierarchy}cgroup.procs && ! -L ${hierarchy%/} ]] && mkdir -p "$hierarchy$cgroup"
  done
  port=$(free_port) healthz=$(free_port)
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup
containerRuntimeEndpoint: unix://$(node_sock "$i")
address: $(node_ip "$i")
port: $port
readOnlyPort: 0
healthzBindAddress: $(node_ip "$i")
healthzPort: $healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization: {mode: Webhook}
failSwapOn: false
staticPodPath: ""
# Disk and memory of a shared test machine are not the node's to defend:
# no evictions, no image garbage collection while tests run.
evictionHard: {memory.available: "0%", nodefs.available: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
podLogsDir: $dir/pods
EOF
  # One kubelet starts at a time, on this whole machine (see DEVICE_PLUGIN_SOCKET).
  local lock
  mkdir -p "$cache"
  exec {lock}>"$cache/kubelet-start.lock"
  flock -w 120 "$lock" || die "another kubelet held $cache/kubelet-start.lock for 120 s"
  local made
  for made in "${KUBELET_HOST_DIRS[@]}"; do
    [[ -d $made ]] || grep -qxF "$made" "$state/made-host-dirs" 2>/dev/null || echo "$made" >>"$state/made-host-dirs"
  done
  rm -f "$DEVICE_PLUGIN_SOCKET"
  # The lock's descriptor stays out of the kubelet, which would otherwise hold it for life.
  start "kubelet-$i" "$bindir/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" \
    --hostname-override "$(node_name "$i")" --cloud-provider external --v=0 {lock}>&-
  wait_for "$state/kubelet-$i.pid" 60 test -S "$DEVICE_PLUGIN_SOCKET" || failed "kubelet-$i"
  exec {lock}>&-
}

# Every kubelet serves device-plugin registration on this one path, whatever
# its --root-dir (Kubernetes' pluginapi.KubeletSocket). Starting, a kubelet
# removes the sockets there, then listens; two kubelets starting together can
# both remove, and the later listen fails ("bind: address already in use"),
# which stops that kubelet's container manager: the node never gets Ready.
# Once a kubelet listens, a later one removing its socket costs nothing here
# (no device plugins). So kubelet_up starts them one at a time under a lock
# and waits for each one's socket.
DEVICE_PLUGIN_SOCKET=/var/lib/kubelet/device-plugins/kubelet.sock

# What kubelet makes outside "$state" whatever its flags: the folder of
# DEVICE_PLUGIN_SOCKET, and /var/log/containers, where it links each
# container's log (Kubernetes' ContainerLogsDir). Pod logs themselves go
# under the node's folder (podLogsDir).
KUBELET_HOST_DIRS=(/var/lib/kubelet /var/lib/kubelet/device-plugins /var/log/containers)

# kubelet refuses a loopback --node-ip ("nodeIP can't be loopback address"),
# and without an address hostNetwork pods get no IP. So each kubelet runs
# with an external cloud provider, which leaves node addresses to a cloud
# controller, and this script plays that part: it sets 127.0.0.i as the
# node's InternalIP and removes the cloud provider's "uninitialized" taint.
node_initialize() { # node
  local name kubectl=("$bindir/kubectl" --kubeconfig "$state/kubeconfig")
  name=$(node_name "$1")
  wait_for "$state/kubelet-$1.pid" 60 "${kubectl[@]}" get node "$name" || failed "kubelet-$1"
  "${kubectl[@]}" patch node "$name" --subresource=status --type=merge -p \
    "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$(node_ip "$1")\"},{\"type\":\"Hostname\",\"address\":\"$name\"}]}}" \
    >/dev/null || die "cannot set the address of $name"
  "${kubectl[@]}" taint node "$name" node.cloudprovider.kubernetes.io/uninitialized- >/dev/null 2>&1 || true
}

# Import an image archive (`docker save` output) into a node's containerd,
# where kubelet finds it with imagePullPolicy IfNotPresent.
import_image() { # node file
  ctr --address "$(node_sock "$1")" -n k8s.io images import "$2" >/dev/null \
    || die "importing $2 into $(node_name "$1")'s containerd failed"
}

load_image() { # file: into every node
  local n i
  n=$(node_count)
  ((n > 0)) || die "no node is up; run: scripts/cluster up --nodes 1"
  for ((i = 1; i <= n; i++)); do import_image "$i" "$1"; done
}

# Stop the nodes and remove what they made: the scheduler and each kubelet by
# pid, every container by its task, containerd by pid, then any process left
# in the nodes' cgroups, the cgroups, and the mounts under the nodes' folders.
nodes_down() {
  local n i id
  n=$(node_count)
  stop_pid kube-scheduler
  for ((i = 1; i <= n; i++)); do stop_pid "kubelet-$i"; done
  for ((i = 1; i <= n; i++)); do
    if alive "$state/containerd-$i.pid"; then
      for id in $(ctr --address "$(node_sock "$i")" -n k8s.io tasks list -q 2>/dev/null); do
        ctr --address "$(node_sock "$i")" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      done
    fi
    stop_pid "containerd-$i"
    # Each container's shim outlives containerd by design; ours are known by
    # the socket they were started with.
    local shim
    for shim in $(pgrep -f -- "-address $(node_sock "$i")" || true); do kill -KILL "$shim" 2>/dev/null || true; done
    remove_cgroups "$i"
    unmount_under "$(node_dir "$i")"
  done
  remove_kubelet_host_state
}

# Remove what kubelet made outside "$state" (KUBELET_HOST_DIRS): our
# containers' log links always; the device-plugin files and the folders this
# cluster made only once no kubelet is left to use them. rmdir keeps a folder
# that holds anything else.
remove_kubelet_host_state() {
  find /var/log/containers -maxdepth 1 -type l -lname "$state/*" -delete 2>/dev/null || true
  [[ -f $state/made-host-dirs ]] || return 0
  pgrep -x kubelet >/dev/null && return 0
  rm -f "$DEVICE_PLUGIN_SOCKET" /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
  local dir
  while IFS= read -r dir; do
    rmdir "$dir" 2>/dev/null || log "left $dir: it holds more than kubelet made for this cluster"
  done < <(sort -r "$state/made-host-dirs")
  rm -f "$state/made-host-dirs"
}

remove_cgroups() { # node
  [[ -f $state/apiserver.port ]] || return 0
  local cgroup hierarchy pid group
  cgroup=$(node_cgroup "$1")
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -d $hierarchy$cgroup ]] || continue
    while IFS= read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done \
      < <(find "$hierarchy$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null)
    # Deepest first: a cgroup can be removed once its children are gone and
    # its killed processes have exited.
    while IFS= read -r group; do
      wait_for "" 5 rmdir "$group" || log "could not remove cgroup $group"
    done < <(find "$hierarchy$cgroup" -depth -type d)
  done
}

unmount_under() { # folder: container rootfs, shm and projected-volume mounts
  local mnt
  [[ -d $1 ]] || return 0
  while IFS= read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done \
    < <(awk -v d="$1/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
}
