// SPDX-License-Identifier: GPL-2.0
/*
 * An ordinary module, not a livepatch and without klive tags: the agent must refuse it.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/module.h>

static int __init klive_test_plain_init(void)
{
	pr_info("loaded (an ordinary module, not a livepatch)\n");
	return 0;
}

static void __exit klive_test_plain_exit(void)
{
}

module_init(klive_test_plain_init);
module_exit(klive_test_plain_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klive test: an ordinary module");
