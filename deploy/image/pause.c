/* The sandbox ("pause") process of mignet.local/pause:bed: PID 1 of every pod
 * sandbox. Sleeps until SIGTERM/SIGINT, then exits 0 at once (as PID 1 it gets
 * no default signal actions, so it needs handlers, or pod deletion waits for
 * the runtime's SIGKILL). Reaps orphans when the pod shares a PID namespace. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1) {
        write(1, "pause: sleeps until SIGTERM/SIGINT\n", 35);
        return 0;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) pause();
}
