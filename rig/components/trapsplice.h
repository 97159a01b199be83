/* What a trapsplice component declares to the host loader (rig/splicer/component.py).
 *
 * Declarations are NUL-separated strings in the ".trapsplice" section; the host reads
 * them from the object and does not load that section into the guest.
 *
 *   TRAPSPLICE_REPLACE(kernel_fn, fn)  a splice at kernel_fn's entry sends its callers to fn,
 *                                       which must have kernel_fn's prototype (plain cdecl in
 *                                       this kernel build) and returns to kernel_fn's caller.
 *   TRAPSPLICE_WRAP(kernel_fn, fn)      fn(struct trapsplice_frame *) runs at the point, then
 *                                       the displaced instructions and kernel_fn go on.
 *   TRAPSPLICE_PARAM(var, scale, doc)   a 32-bit variable the host sets as round(value * scale).
 */
#ifndef TRAPSPLICE_H
#define TRAPSPLICE_H

#define TRAPSPLICE_CAT2(a, b) a##b
#define TRAPSPLICE_CAT(a, b) TRAPSPLICE_CAT2(a, b)
#define TRAPSPLICE_META(text) \
    static const char TRAPSPLICE_CAT(trapsplice_meta_, __LINE__)[] \
        __attribute__((section(".trapsplice"), used)) = text

#define TRAPSPLICE_REPLACE(kernel_fn, fn) TRAPSPLICE_META("replace " #kernel_fn " " #fn)
#define TRAPSPLICE_WRAP(kernel_fn, fn) TRAPSPLICE_META("wrap " #kernel_fn " " #fn)
#define TRAPSPLICE_PARAM(var, scale, doc) TRAPSPLICE_META("param " #var " " #scale " " doc)

/* What a wrap patch hands its component: pushad's frame over the saved EFLAGS, then the
 * interrupted stack. At a function entry ret is the return address and args[] the
 * caller's arguments. Fields written here are what the kernel code resumes with. */
struct trapsplice_frame {
    unsigned long edi, esi, ebp, esp_at_pushad, ebx, edx, ecx, eax;
    unsigned long eflags;
    unsigned long ret;
    unsigned long args[0];
};

#endif
