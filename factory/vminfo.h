/* A VM as a reply shows it (vminfo.c): its info with its disks, a stop's
 * report, its state in a sentence, and the names of the hand-out steps. */
#ifndef VMF_VMINFO_H
#define VMF_VMINFO_H

#include <stddef.h>
#include <stdint.h>

#include "control.pb-c.h"
#include "factory.h"
#include "pool.h"

extern const char *const vmf_step_names[VMF_STEP_COUNT];

/* vm as a reply shows it, with pss_kib read on a worker (vmf_proc_pss_kib). */
void vmf_vm_info_fill(struct vmf_daemon *d, const struct vmf_vm *vm, uint64_t pss_kib, Vmf__Control__VmInfo *info);
void vmf_vm_info_clear(Vmf__Control__VmInfo *info);
/* info->disks from vm's; freed by vmf_disk_info_clear (or free_unpacked). */
void vmf_disk_info_fill(const struct vmf_vm *vm, Vmf__Control__VmInfo *info);
void vmf_disk_info_clear(Vmf__Control__VmInfo *info);
/* One disk of vm's, in slot, as a reply shows it. */
void vmf_disk_info_one(const struct vmf_vm_disk *dk, unsigned slot, Vmf__Control__DiskInfo *di);
void vmf_disk_info_one_clear(Vmf__Control__DiskInfo *di);
/* "disk", "scratch" or "cow". */
const char *vmf_disk_kind_name(enum vmf_disk_kind k);
/* A reply's StopReport from rep: strings borrowed, lost has
 * VMF_STOP_LOST_MAX entries. */
void vmf_stop_report_fill(const struct vmf_stop_report *rep, Vmf__Control__StopReport *sr, char **lost);
/* "gone (why)" or the state's name, for a message about vm's state. */
const char *vmf_vm_state_desc(const struct vmf_vm *vm, char *buf, size_t n);

#endif
