/*
 * peakrss COMMAND [ARG...]: runs COMMAND, then prints "peakrss <KiB>" (the child's peak
 * resident set size, ru_maxrss from wait4) on stderr and exits with the child's status.
 *
 * The benchmark's guest has only busybox, whose `time -v` of Debian 12 (1.35) reports
 * ru_maxrss multiplied by pagesize/1024 (it treats a value already in KiB as pages), four
 * times too much on x86-64; this reads the kernel's figure as it is.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: peakrss COMMAND [ARG...]\n");
		return 64;
	}
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "peakrss: fork: %s\n", strerror(errno));
		return 71;
	}
	if (pid == 0) {
		execvp(argv[1], argv + 1);
		fprintf(stderr, "peakrss: %s: %s\n", argv[1], strerror(errno));
		_exit(127);
	}
	int status;
	struct rusage ru;
	while (wait4(pid, &status, 0, &ru) < 0) {
		if (errno != EINTR) {
			fprintf(stderr, "peakrss: wait4: %s\n", strerror(errno));
			return 71;
		}
	}
	fprintf(stderr, "peakrss %ld\n", ru.ru_maxrss);
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}
