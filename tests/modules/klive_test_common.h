/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared by the klive test livepatches.
 *
 * The patched /proc files print a marker followed by the text the kernel printed before the
 * patch. The original text comes from reading the /proc file once in module init, before
 * klp_enable_patch(): saved_command_line and linux_proc_banner are not exported to modules,
 * and the replaced function cannot call the function it replaces (ftrace would send the
 * call back to the replacement).
 */
#ifndef KLIVE_TEST_COMMON_H
#define KLIVE_TEST_COMMON_H

#include <linux/fs.h>
#include <linux/module.h>
#include <linux/string.h>

#ifndef KLIVE_BUILD_ID
#error "KLIVE_BUILD_ID must be defined (see Kbuild)"
#endif

#define KLIVE_MARKER "klive-level-"

/* Reads a whole small /proc file into buf, without its trailing newline. */
static inline int klive_read_proc(const char *path, char *buf, size_t size)
{
	struct file *f;
	loff_t pos = 0;
	ssize_t n;

	f = filp_open(path, O_RDONLY, 0);
	if (IS_ERR(f))
		return PTR_ERR(f);
	n = kernel_read(f, buf, size - 1, &pos);
	filp_close(f, NULL);
	if (n < 0)
		return n;
	buf[n] = '\0';
	if (n > 0 && buf[n - 1] == '\n')
		buf[n - 1] = '\0';
	return 0;
}

/*
 * Reads /proc/cmdline and drops the "klive-level-N " prefixes an earlier test patch (which
 * this one replaces) put in front of the original command line.
 */
static inline int klive_original_cmdline(char *buf, size_t size)
{
	char *p;
	int err = klive_read_proc("/proc/cmdline", buf, size);

	if (err)
		return err;
	p = buf;
	while (strncmp(p, KLIVE_MARKER, strlen(KLIVE_MARKER)) == 0) {
		char *space = strchr(p, ' ');

		if (!space)
			break;
		p = space + 1;
	}
	memmove(buf, p, strlen(p) + 1);
	return 0;
}

/* Reads /proc/version and drops a " klive-level-N" suffix an earlier test patch added. */
static inline int klive_original_version(char *buf, size_t size)
{
	char *marker;
	int err = klive_read_proc("/proc/version", buf, size);

	if (err)
		return err;
	marker = strstr(buf, " " KLIVE_MARKER);
	if (marker)
		*marker = '\0';
	return 0;
}

#endif
