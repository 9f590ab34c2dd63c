/* The pause container of the local test nodes' pod sandboxes: holds the
 * sandbox's namespaces open until it is told to stop, and reaps orphans, the
 * job of Kubernetes' own pause (registry.k8s.io/pause), which cannot be
 * pulled here. Built static by scripts/image. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
