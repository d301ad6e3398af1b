/* rekeyfs test helper: a PKCS#11 module that forwards to a real one
 * (P11_REAL_MODULE, default SoftHSM2) but makes C_Decrypt wait while the
 * file named by P11_STALL_FILE exists: a token that stops answering, for
 * tests/integration/test_pkcs11.sh.  Built as tests/p11_stall.so. */
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST shim;
static CK_FUNCTION_LIST_PTR real;

static CK_RV stall_decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	const char *f = getenv("P11_STALL_FILE");
	struct stat st;
	while (f && stat(f, &st) == 0)
		usleep(10000);
	return real->C_Decrypt(s, in, inlen, out, outlen);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp);
CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp)
{
	if (!real) {
		const char *path = getenv("P11_REAL_MODULE");
		void *h = dlopen(path ? path : "/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
		CK_C_GetFunctionList g = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
		if (!g || g(&real) != CKR_OK)
			return CKR_GENERAL_ERROR;
		shim = *real;
		shim.C_Decrypt = stall_decrypt;
	}
	*pp = &shim;
	return CKR_OK;
}
