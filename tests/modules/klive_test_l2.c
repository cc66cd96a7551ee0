// SPDX-License-Identifier: GPL-2.0
/*
 * klive test patch, level 2: replaces level 1 (.replace = true) and changes two functions
 * in one transition: /proc/cmdline prints "klive-level-2 " before the original command
 * line, /proc/version gets " klive-level-2" appended.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <asm/setup.h>

#include "klive_test_common.h"

static char original_cmdline[COMMAND_LINE_SIZE];
static char original_version[512];

static int klive_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, KLIVE_MARKER "2 %s\n", original_cmdline);
	return 0;
}

static int klive_version_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s " KLIVE_MARKER "2\n", original_version);
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = klive_cmdline_proc_show,
	},
	{
		.old_name = "version_proc_show",
		.new_func = klive_version_proc_show,
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

	if (!err)
		err = klive_original_version(original_version, sizeof(original_version));
	if (err) {
		pr_err("cannot read /proc/cmdline or /proc/version: %d\n", err);
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
MODULE_DESCRIPTION("klive test livepatch, level 2: /proc/cmdline and /proc/version");
MODULE_INFO(livepatch, "Y");
MODULE_INFO(klive_level, "2");
MODULE_INFO(klive_build_id, KLIVE_BUILD_ID);
MODULE_VERSION("2");
