// SPDX-License-Identifier: GPL-2.0
/*
 * klive test patch, level 3, for the stalled-transition scenario.
 *
 * It replaces pipe_read(), so a task sleeping in pipe_read() (a reader of an empty pipe)
 * keeps the function on its stack and cannot be switched to the patched state: the
 * transition stalls until the agent reverses it. Tasks switched early do run the
 * replacement during the transition, so the replacement is a faithful copy of pipe_read()
 * from fs/pipe.c of Debian's Linux 6.1.192 (Copyright (C) 1991, 1992, 1999 Linus Torvalds),
 * with the static inline helpers it uses copied as well; the 6.12 line gets a copy of
 * Debian's 6.12.117 pipe_read() instead (klive_test_pipe_read_6_*.h).
 *
 * It also replaces cmdline_proc_show ("klive-level-3 " before the original command line),
 * so a test can see whether the patched or the original code runs.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/pipe_fs_i.h>
#include <linux/poll.h>
#include <linux/sched/signal.h>
#include <linux/seq_file.h>
#include <linux/uio.h>
#include <linux/version.h>
#include <linux/wait.h>
#include <linux/watch_queue.h>
#include <asm/setup.h>

#include "klive_test_common.h"

static char original_cmdline[COMMAND_LINE_SIZE];

static int klive_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, KLIVE_MARKER "3 %s\n", original_cmdline);
	return 0;
}

/*
 * A faithful copy of the running kernel line's pipe_read(): tasks switched early run it
 * during the transition.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include "klive_test_pipe_read_6_12.h"
#else
#include "klive_test_pipe_read_6_1.h"
#endif

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = klive_cmdline_proc_show,
	},
	{
		.old_name = "pipe_read",
		.new_func = klive_pipe_read,
	},
	{}
};

static struct klp_object objs[] = {
	{
		/* NULL name: vmlinux */
		.funcs = funcs,
	},
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.replace = true,
};

static int __init klive_test_init(void)
{
	int err = klive_original_cmdline(original_cmdline, sizeof(original_cmdline));

	if (err) {
		pr_err("cannot read /proc/cmdline: %d\n", err);
		return err;
	}
	return klp_enable_patch(&patch);
}

static void __exit klive_test_exit(void)
{
}

module_init(klive_test_init);
module_exit(klive_test_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klive test livepatch, level 3: pipe_read, for a stalled transition");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(klive_level, "3");
MODULE_INFO(klive_build_id, KLIVE_BUILD_ID);
MODULE_VERSION("3");
