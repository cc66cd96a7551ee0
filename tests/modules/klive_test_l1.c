// SPDX-License-Identifier: GPL-2.0
/*
 * klive test patch, level 1: /proc/cmdline prints "klive-level-1 " before the original
 * command line. A cumulative patch (.replace = true), like every klive patch.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <asm/setup.h>

#include "klive_test_common.h"

static char original_cmdline[COMMAND_LINE_SIZE];

static int klive_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, KLIVE_MARKER "1 %s\n", original_cmdline);
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = klive_cmdline_proc_show,
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
MODULE_DESCRIPTION("klive test livepatch, level 1: /proc/cmdline");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(klive_level, "1");
MODULE_INFO(klive_build_id, KLIVE_BUILD_ID);
MODULE_VERSION("1");
