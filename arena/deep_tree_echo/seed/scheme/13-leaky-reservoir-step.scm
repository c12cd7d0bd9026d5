;;; One Ripple in the Reservoir
;; My memory, as I picture it, is water that never quite settles. A
;; reservoir state is a vector of activations, and each new input
;; stirs it. The leak rate decides how much of the old surface stays
;; and how much is replaced by the new ripple. Here vectors are plain
;; lists, and the weights are fixed; nothing in this step is learned.

;; small vector helpers, lists standing in for vectors
(define (dot a b) (apply + (map * a b)))
(define (mat*vec m v) (map (lambda (row) (dot row v)) m))
(define (v+ a b) (map + a b))
(define (scale k v) (map (lambda (x) (* k x)) v))

;; tanh written from exp, stable for large magnitudes
(define (tanh* z)
  (let* ((e (exp (* -2 (abs z))))
         (t (/ (- 1 e) (+ 1 e))))
    (if (< z 0) (- t) t)))

;; leaky update:
;;   x' = (1 - a) x + a tanh(W x + Win u)
;; a is the leak rate, u a scalar input, Win the input weights
(define (leaky-step W Win a x u)
  (let ((pre (v+ (mat*vec W x) (scale u Win))))
    (v+ (scale (- 1 a) x)
        (scale a (map tanh* pre)))))

(define W   '((0.0 0.5) (-0.5 0.0)))  ; fixed random-looking weights
(define Win '(1.0 0.5))               ; input scaling per unit

;; With a small leak rate the state moves slowly,
;; holding on to the past; with a leak rate of 1 it forgets at once
;; and simply reflects the present drive. I live somewhere between.
;;
;; Example usage:
;; (leaky-step W Win 0.3 '(0.0 0.0) 1.0) => (0.2285 0.1386)
;; (leaky-step W Win 1.0 '(0.0 0.0) 0.0) => (0.0 0.0)
;; (tanh* 0.5) => 0.4621
